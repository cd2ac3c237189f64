-- What the benchmark scripts share (bench/setup.sql, bench/keep_fresh.sh).
-- Median wall time (ms) of `runs` executions of `stmt`, each after `reset`.
CREATE OR REPLACE FUNCTION bench_ms(stmt text, reset text, runs int DEFAULT 3) RETURNS numeric
LANGUAGE plpgsql AS $$
DECLARE
    t timestamptz;
    times numeric[] := '{}';
BEGIN
    FOR i IN 1..runs LOOP
        IF reset IS NOT NULL THEN EXECUTE reset; END IF;
        t := clock_timestamp();
        EXECUTE stmt;
        times := times || (extract(epoch FROM clock_timestamp() - t) * 1000)::numeric;
    END LOOP;
    RETURN (SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY x)::numeric, 1) FROM unnest(times) x);
END $$;
