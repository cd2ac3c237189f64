{#- identity_merge for dbt. Use the macros as a model's post-hooks (see dbt/example):
      identity_merge_project(project, mode)   the project, created when missing (on-run-start)
      identity_merge_attach(project, ...)     the stamping trigger on this model's table
      identity_merge_backfill()               its identity history (mp_backfill_from)
      identity_merge_restamp_all()            every row stamped; a hook with transaction: false
      identity_merge_restamp()                stale stamps fixed after later merges
    and identity_merge_people(relation, project) in a model, to join events to people. -#}

{% macro identity_merge_project(project, mode='simplified') -%}
SELECT mp_create_project({{ dbt.string_literal(project) }}, {{ dbt.string_literal(mode) }})
 WHERE NOT EXISTS (SELECT 1 FROM identity_merge.projects WHERE token = {{ dbt.string_literal(project) }})
{%- endmacro %}

{% macro identity_merge_attach(project, distinct_id_column='distinct_id', canonical_column='canonical_id',
                               device_id_column='', user_id_column='', relation=this) -%}
SELECT mp_attach({{ dbt.string_literal(relation) }}::regclass, {{ dbt.string_literal(project) }},
                 {{ dbt.string_literal(distinct_id_column) }}, {{ dbt.string_literal(canonical_column) }}, true,
                 {{ dbt.string_literal(device_id_column) }}, {{ dbt.string_literal(user_id_column) }})
{%- endmacro %}

{% macro identity_merge_backfill(order_by=none, relation=this) -%}
SELECT * FROM mp_backfill_from({{ dbt.string_literal(relation) }}::regclass
    {%- if order_by %}, {{ dbt.string_literal(order_by) }}{% endif %})
{%- endmacro %}

{% macro identity_merge_restamp_all(relation=this) -%}
CALL mp_restamp_all({{ dbt.string_literal(relation) }}::regclass)
{%- endmacro %}

{% macro identity_merge_restamp(relation=this) -%}
SELECT mp_restamp({{ dbt.string_literal(relation) }}::regclass)
{%- endmacro %}

{#- Events with their person: the stamped canonical id, and the person's cluster (its number of
    ids, whether an identified id is in it; an id never joined is a person of one id). -#}
{% macro identity_merge_people(relation, project, canonical_column='canonical_id') -%}
SELECT e.*, e.{{ adapter.quote(canonical_column) }} AS person,
       coalesce(c.size, 1) AS person_ids, coalesce(c.identified, false) AS person_identified
  FROM {{ relation }} e
  LEFT JOIN identity_merge.clusters c
    ON c.project_id = (SELECT p.project_id FROM identity_merge.projects p WHERE p.token = {{ dbt.string_literal(project) }})
   AND c.canonical_id = e.{{ adapter.quote(canonical_column) }}
{%- endmacro %}
