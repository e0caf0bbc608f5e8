-- Nothing in schema ds is callable by PUBLIC; grant what each role needs
-- (see README, "Privileges").
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA ds FROM PUBLIC;

-- Generic plans for every statement the SQL and PL/pgSQL functions of ds
-- run, as the C functions get for their kept plans (storage.rs,
-- GenericPlans): short keyed statements, which the default plan_cache_mode
-- would re-plan at every call when they take arrays. Set per function, so
-- the caller's own queries keep their setting. The C functions have no such
-- clause: its GUC nest level cost about 6% of an append.
DO $plan_cache$
DECLARE
    f pg_catalog.regprocedure;
BEGIN
    FOR f IN SELECT p.oid::pg_catalog.regprocedure FROM pg_catalog.pg_proc p
             WHERE p.pronamespace OPERATOR(pg_catalog.=) 'ds'::pg_catalog.regnamespace
               AND p.prosecdef
               AND p.prolang OPERATOR(pg_catalog.<>) (SELECT l.oid FROM pg_catalog.pg_language l
                                                    WHERE l.lanname OPERATOR(pg_catalog.=) 'c')
             ORDER BY 1
    LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s SET plan_cache_mode = force_generic_plan', f);
    END LOOP;
END
$plan_cache$;
