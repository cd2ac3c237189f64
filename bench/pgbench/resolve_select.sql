\set n random(1, 100000)
SELECT canonical FROM identities WHERE distinct_id = 'dev-' || :n;
