-- Every event's person is the one the Identifying Users page's tables give (no rows: passes).
SELECT id, person, expected_person FROM {{ ref('events_by_person') }} WHERE person IS DISTINCT FROM expected_person
