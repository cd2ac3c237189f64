-- Events joined to people: funnels and retention per person, not per device.
{{ config(materialized='view') }}
{{ identity_merge.identity_merge_people(ref('tracks'), 'dbt-example') }}
