-- mp_check finds nothing in the project (no rows: passes).
SELECT * FROM mp_check('dbt-example')
