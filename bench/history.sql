-- A synthetic identity history of :edges events, in time order: users signing in on 1-3 devices
-- ($identify), legacy aliases, and merges of two users (which chain clusters together).
DROP TABLE IF EXISTS hist;
CREATE TABLE hist AS
SELECT n,
       CASE WHEN n % 10 < 7 THEN 'identify' WHEN n % 10 < 8 THEN 'alias' ELSE 'merge' END AS op,
       'u' || (hashint8(n) & 2147483647) % (:edges / 4 + 1) AS a,
       CASE WHEN n % 10 < 7 THEN 'd' || n
            WHEN n % 10 < 8 THEN 'al' || n
            ELSE 'u' || (hashint8(-n) & 2147483647) % (:edges / 4 + 1) END AS b
  FROM generate_series(1, :edges) n;
ANALYZE hist;
