\set u random(1, 2000)
\set a random(1, 1000000000000000)
SELECT mp_identify('pgb-user-' || :u, 'pgb-anon-' || :a, 'pgbench');
