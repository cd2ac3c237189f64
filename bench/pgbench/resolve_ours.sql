\set n random(1, 100000)
SELECT mp_resolve('dev-' || :n);
