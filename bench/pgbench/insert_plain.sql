\set n random(1, 300000)
INSERT INTO pgb_plain (distinct_id, event, properties) VALUES ('dev-' || (:n % 100000 + 1), 'Page View', '{}');
