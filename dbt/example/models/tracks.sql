-- The events as a Segment warehouse load would land them (anonymous_id, user_id), plus the two
-- columns identity_merge works with. The post-hooks attach the table to the project, load the
-- device/user links it carries (the rows were written before the trigger existed), and stamp
-- every row.
{{ config(
    materialized='table',
    post_hook=[
      identity_merge.identity_merge_attach('dbt-example', device_id_column='anonymous_id', user_id_column='user_id'),
      identity_merge.identity_merge_backfill(order_by='received_at'),
      {"sql": identity_merge.identity_merge_restamp_all(), "transaction": false}
    ]
) }}
SELECT id, received_at::timestamptz AS received_at, anonymous_id::text AS anonymous_id, user_id::text AS user_id,
       event::text AS event, expected_person::text AS expected_person,
       coalesce(user_id::text, '$device:' || anonymous_id) AS distinct_id,
       NULL::text AS canonical_id
  FROM {{ ref('segment_tracks') }}
