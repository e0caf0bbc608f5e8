-- Nothing in schema ds is callable by PUBLIC; grant what each role needs
-- (see README, "Privileges").
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA ds FROM PUBLIC;
