\set base random(1, 1000000)
INSERT INTO mix_plain (distinct_id, event, properties)
SELECT CASE WHEN g % 50 = 0 THEN 'mu' || ((:base + g) % 2000) ELSE 'md' || ((:base + g) % 20000) END,
       CASE WHEN g % 50 = 0 THEN '$identify' ELSE 'Page View' END,
       CASE WHEN g % 50 = 0 THEN jsonb_build_object('$identified_id', 'mu' || ((:base + g) % 2000), '$anon_id', 'md' || ((:base + 7 * g) % 20000))
            ELSE '{}' END
  FROM generate_series(1, 500) g;
