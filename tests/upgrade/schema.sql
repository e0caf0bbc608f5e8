-- The extension's schema as catalog facts, one line per object and property,
-- each starting with the object it is about. scripts/upgrade-test.sh compares
-- a database that went through ALTER EXTENSION durable_streams UPDATE with a
-- fresh CREATE EXTENSION of the same version: any line on one side only is
-- something an upgrade script (sql/durable_streams--A--B.sql) forgot or did
-- differently. Lines starting with "acl " are privileges (compared for
-- databases without user grants). OIDs never appear, only names; runs of
-- white space (view definitions) become one space, so a fact is one line.
\set ON_ERROR_STOP 1
SET timezone = 'UTC';

WITH ext AS (
    SELECT * FROM pg_extension WHERE extname = 'durable_streams'
), ns AS (
    SELECT extnamespace AS oid FROM ext
)
SELECT regexp_replace(line, '\s+', ' ', 'g') FROM (
    -- The extension.
    SELECT format('extension durable_streams: version=%s schema=%s relocatable=%s owner=%s',
                  extversion, extnamespace::regnamespace, extrelocatable,
                  pg_get_userbyid(extowner)) AS line
    FROM ext
    UNION ALL
    SELECT format('extension config dump: %s condition=%L', t.rel::regclass, t.cond)
    FROM ext, unnest(extconfig, extcondition) AS t(rel, cond)
    -- Every object the extension owns (what DROP EXTENSION drops).
    UNION ALL
    SELECT format('extension member: %s', pg_describe_object(classid, objid, objsubid))
    FROM pg_depend
    WHERE refclassid = 'pg_extension'::regclass AND refobjid = (SELECT oid FROM ext)
      AND deptype = 'e'
    -- The schema.
    UNION ALL
    SELECT format('schema %s: owner=%s', nspname, pg_get_userbyid(nspowner))
    FROM pg_namespace WHERE oid = (SELECT oid FROM ns)
    UNION ALL
    SELECT format('acl schema %s: %s', nspname, nspacl)
    FROM pg_namespace WHERE oid = (SELECT oid FROM ns)
    -- Tables, views, sequences, indexes.
    UNION ALL
    SELECT format('relation %s: kind=%s persistence=%s owner=%s options=%s rowsecurity=%s/%s am=%s',
                  c.oid::regclass, c.relkind, c.relpersistence, pg_get_userbyid(c.relowner),
                  c.reloptions, c.relrowsecurity, c.relforcerowsecurity,
                  (SELECT amname FROM pg_am WHERE oid = c.relam))
    FROM pg_class c WHERE c.relnamespace = (SELECT oid FROM ns)
    UNION ALL
    SELECT format('acl relation %s: %s', c.oid::regclass, c.relacl)
    FROM pg_class c WHERE c.relnamespace = (SELECT oid FROM ns)
    UNION ALL
    SELECT format('column %s.%s: position=%s type=%s not_null=%s default=%s identity=%s generated=%s collation=%s compression=%s storage=%s',
                  a.attrelid::regclass, a.attname,
                  row_number() OVER (PARTITION BY a.attrelid ORDER BY a.attnum),
                  format_type(a.atttypid, a.atttypmod), a.attnotnull,
                  pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated,
                  (SELECT collname FROM pg_collation WHERE oid = a.attcollation),
                  a.attcompression, a.attstorage)
    FROM pg_attribute a
    JOIN pg_class c ON c.oid = a.attrelid
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE c.relnamespace = (SELECT oid FROM ns) AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    SELECT format('acl column %s.%s: %s', a.attrelid::regclass, a.attname, a.attacl)
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
    WHERE c.relnamespace = (SELECT oid FROM ns) AND a.attnum > 0 AND NOT a.attisdropped
      AND a.attacl IS NOT NULL
    UNION ALL
    SELECT format('constraint %s on %s: %s deferrable=%s/%s',
                  conname, conrelid::regclass, pg_get_constraintdef(oid),
                  condeferrable, condeferred)
    FROM pg_constraint WHERE connamespace = (SELECT oid FROM ns)
    UNION ALL
    SELECT format('index %s: %s', i.indexrelid::regclass, pg_get_indexdef(i.indexrelid))
    FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
    WHERE c.relnamespace = (SELECT oid FROM ns)
    UNION ALL
    SELECT format('sequence %s: type=%s start=%s increment=%s min=%s max=%s cache=%s cycle=%s owned_by=%s',
                  s.seqrelid::regclass, format_type(s.seqtypid, NULL), s.seqstart,
                  s.seqincrement, s.seqmin, s.seqmax, s.seqcache, s.seqcycle,
                  (SELECT string_agg(pg_describe_object(refclassid, refobjid, refobjsubid)
                                     || ' (' || deptype::text || ')', ', ')
                   FROM pg_depend
                   WHERE classid = 'pg_class'::regclass AND objid = s.seqrelid
                     AND refclassid = 'pg_class'::regclass AND deptype IN ('a', 'i')))
    FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid
    WHERE c.relnamespace = (SELECT oid FROM ns)
    UNION ALL
    SELECT format('view %s: %s', c.oid::regclass, pg_get_viewdef(c.oid))
    FROM pg_class c WHERE c.relnamespace = (SELECT oid FROM ns) AND c.relkind IN ('v', 'm')
    UNION ALL
    SELECT format('trigger %s on %s: %s enabled=%s',
                  t.tgname, t.tgrelid::regclass, pg_get_triggerdef(t.oid), t.tgenabled)
    FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
    WHERE c.relnamespace = (SELECT oid FROM ns) AND NOT t.tgisinternal
    UNION ALL
    SELECT format('policy %s on %s: cmd=%s permissive=%s roles=%s using=%s check=%s',
                  p.polname, p.polrelid::regclass, p.polcmd, p.polpermissive,
                  p.polroles::regrole[], pg_get_expr(p.polqual, p.polrelid),
                  pg_get_expr(p.polwithcheck, p.polrelid))
    FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
    WHERE c.relnamespace = (SELECT oid FROM ns)
    -- Functions: signature, result, every property that changes behaviour.
    UNION ALL
    SELECT format('function %s: arguments=(%s) returns=%s kind=%s volatility=%s strict=%s security_definer=%s leakproof=%s parallel=%s cost=%s rows=%s config=%s language=%s owner=%s symbol_or_body=%s library=%s',
                  p.oid::regprocedure, pg_get_function_arguments(p.oid),
                  pg_get_function_result(p.oid), p.prokind, p.provolatile, p.proisstrict,
                  p.prosecdef, p.proleakproof, p.proparallel, p.procost, p.prorows,
                  p.proconfig, l.lanname, pg_get_userbyid(p.proowner),
                  CASE WHEN l.lanname = 'c' THEN p.prosrc ELSE md5(p.prosrc) END, p.probin)
    FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
    WHERE p.pronamespace = (SELECT oid FROM ns)
    UNION ALL
    SELECT format('acl function %s: %s', p.oid::regprocedure, p.proacl)
    FROM pg_proc p WHERE p.pronamespace = (SELECT oid FROM ns)
    -- Types (composite, enum, domain) other than tables' row types.
    UNION ALL
    SELECT format('type %s: type=%s owner=%s definition=%s', t.oid::regtype, t.typtype,
                  pg_get_userbyid(t.typowner),
                  CASE t.typtype
                      WHEN 'e' THEN (SELECT string_agg(enumlabel, ',' ORDER BY enumsortorder)
                                     FROM pg_enum WHERE enumtypid = t.oid)
                      WHEN 'c' THEN (SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum)
                                     FROM pg_attribute WHERE attrelid = t.typrelid AND attnum > 0)
                      WHEN 'd' THEN format_type(t.typbasetype, t.typtypmod)
                  END)
    FROM pg_type t
    LEFT JOIN pg_class c ON c.oid = t.typrelid
    WHERE t.typnamespace = (SELECT oid FROM ns) AND (c.oid IS NULL OR c.relkind = 'c')
      AND t.typelem = 0
    UNION ALL
    SELECT format('operator %s: %s', o.oid::regoperator, o.oprcode)
    FROM pg_operator o WHERE o.oprnamespace = (SELECT oid FROM ns)
    -- Comments on anything in the schema.
    UNION ALL
    SELECT format('comment on %s: %s', pg_describe_object(d.classoid, d.objoid, d.objsubid),
                  d.description)
    FROM pg_description d
    WHERE (d.classoid = 'pg_class'::regclass
           AND d.objoid IN (SELECT oid FROM pg_class WHERE relnamespace = (SELECT oid FROM ns)))
       OR (d.classoid = 'pg_proc'::regclass
           AND d.objoid IN (SELECT oid FROM pg_proc WHERE pronamespace = (SELECT oid FROM ns)))
       OR (d.classoid = 'pg_namespace'::regclass AND d.objoid = (SELECT oid FROM ns))
    -- The privileges the extension's scripts set (what pg_dump compares
    -- against to dump users' later GRANTs).
    UNION ALL
    SELECT format('acl initial %s: %s %s', pg_describe_object(classoid, objoid, objsubid),
                  privtype, initprivs)
    FROM pg_init_privs
    WHERE (classoid = 'pg_class'::regclass
           AND objoid IN (SELECT oid FROM pg_class WHERE relnamespace = (SELECT oid FROM ns)))
       OR (classoid = 'pg_proc'::regclass
           AND objoid IN (SELECT oid FROM pg_proc WHERE pronamespace = (SELECT oid FROM ns)))
       OR (classoid = 'pg_namespace'::regclass AND objoid = (SELECT oid FROM ns))
) facts
ORDER BY line COLLATE "C";
