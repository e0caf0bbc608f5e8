-- Nothing in schema ds is callable by PUBLIC; grant what each role needs
-- (see README, "Privileges").
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA ds FROM PUBLIC;

-- Generic plans for every statement the ds.* functions run: they are short
-- keyed statements whose kept plans are re-used (storage.rs), and with the
-- default plan_cache_mode Postgres re-plans those that take arrays at every
-- call (a custom plan always looks cheaper for the array it is given):
-- measured at a third of an append's time. Set per function, so the
-- caller's own queries keep their setting.
DO $plan_cache$
DECLARE
    f pg_catalog.regprocedure;
BEGIN
    FOR f IN SELECT p.oid::pg_catalog.regprocedure FROM pg_catalog.pg_proc p
             WHERE p.pronamespace OPERATOR(pg_catalog.=) 'ds'::pg_catalog.regnamespace
               AND p.prosecdef ORDER BY 1
    LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s SET plan_cache_mode = force_generic_plan', f);
    END LOOP;
END
$plan_cache$;
