-- migrate:up
-- Least privilege (docs/adr/0018): one NOLOGIN group role per service schema, holding
-- exactly what the service's queries need: USAGE on its schema, SELECT / INSERT /
-- UPDATE / DELETE on its tables, USAGE on its sequences. Nothing else: no CREATE on any
-- schema, no TRUNCATE / REFERENCES / TRIGGER, owner of nothing, so a service (or an
-- injected statement) cannot change the schema, and cannot read another service's.
-- The services log in as a LOGIN role that is a member of its service's group role
-- (`agentmesh_memory`, `agentmesh_job`: created by the operator with a password, by
-- the dev stack without one); migrations keep running as the owner of the schemas.
--
-- Roles are cluster-wide while this migration runs per database, possibly in several
-- databases of one cluster at once (the tests do): create each role only if missing,
-- and treat "created meanwhile by another database's migration" as done.
DO $$
DECLARE
    role_name text;
BEGIN
    FOREACH role_name IN ARRAY ARRAY['agentmesh_memory_rw', 'agentmesh_job_rw',
                                      'agentmesh_conductor_rw'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = role_name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', role_name);
                -- Only by its creator: two concurrent COMMENTs on one role collide.
                EXECUTE format('COMMENT ON ROLE %I IS %L', role_name,
                    'agentmesh: read and write of schema '
                    || split_part(substr(role_name, 11), '_rw', 1) || ', no DDL');
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- a concurrent migration of another database created it first
            END;
        END IF;
    END LOOP;
END
$$;

-- Before PostgreSQL 15 every role could create objects in `public`; take that away
-- (a no-op on 15 and later, a warning rather than an error where this role does not own
-- `public`). The pgvector types stay usable: USAGE on `public` is untouched.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

GRANT USAGE ON SCHEMA memory TO agentmesh_memory_rw;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA memory TO agentmesh_memory_rw;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA memory TO agentmesh_memory_rw;
-- Tables and sequences that later migrations create (as the role running migrations,
-- which is why migrations always run as the same owner role) get the same grants.
ALTER DEFAULT PRIVILEGES IN SCHEMA memory
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO agentmesh_memory_rw;
ALTER DEFAULT PRIVILEGES IN SCHEMA memory GRANT USAGE ON SEQUENCES TO agentmesh_memory_rw;

GRANT USAGE ON SCHEMA job TO agentmesh_job_rw;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA job TO agentmesh_job_rw;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA job TO agentmesh_job_rw;
ALTER DEFAULT PRIVILEGES IN SCHEMA job
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO agentmesh_job_rw;
ALTER DEFAULT PRIVILEGES IN SCHEMA job GRANT USAGE ON SEQUENCES TO agentmesh_job_rw;

GRANT USAGE ON SCHEMA conductor TO agentmesh_conductor_rw;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA conductor TO agentmesh_conductor_rw;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA conductor TO agentmesh_conductor_rw;
ALTER DEFAULT PRIVILEGES IN SCHEMA conductor
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO agentmesh_conductor_rw;
ALTER DEFAULT PRIVILEGES IN SCHEMA conductor
    GRANT USAGE ON SEQUENCES TO agentmesh_conductor_rw;

-- migrate:down
-- Take this database's grants back; other databases of the cluster keep theirs. A role
-- is dropped only when no database uses it any more: DROP ROLE refuses while grants
-- on it remain anywhere in the cluster, and that refusal leaves the role in place.
-- `REVOKE CREATE ON SCHEMA public` is not undone: handing every role the right to
-- create objects in `public` again would not restore anything this schema needs.
ALTER DEFAULT PRIVILEGES IN SCHEMA conductor
    REVOKE USAGE ON SEQUENCES FROM agentmesh_conductor_rw;
ALTER DEFAULT PRIVILEGES IN SCHEMA conductor
    REVOKE SELECT, INSERT, UPDATE, DELETE ON TABLES FROM agentmesh_conductor_rw;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA conductor FROM agentmesh_conductor_rw;
REVOKE ALL ON ALL TABLES IN SCHEMA conductor FROM agentmesh_conductor_rw;
REVOKE ALL ON SCHEMA conductor FROM agentmesh_conductor_rw;

ALTER DEFAULT PRIVILEGES IN SCHEMA job REVOKE USAGE ON SEQUENCES FROM agentmesh_job_rw;
ALTER DEFAULT PRIVILEGES IN SCHEMA job
    REVOKE SELECT, INSERT, UPDATE, DELETE ON TABLES FROM agentmesh_job_rw;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA job FROM agentmesh_job_rw;
REVOKE ALL ON ALL TABLES IN SCHEMA job FROM agentmesh_job_rw;
REVOKE ALL ON SCHEMA job FROM agentmesh_job_rw;

ALTER DEFAULT PRIVILEGES IN SCHEMA memory REVOKE USAGE ON SEQUENCES FROM agentmesh_memory_rw;
ALTER DEFAULT PRIVILEGES IN SCHEMA memory
    REVOKE SELECT, INSERT, UPDATE, DELETE ON TABLES FROM agentmesh_memory_rw;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA memory FROM agentmesh_memory_rw;
REVOKE ALL ON ALL TABLES IN SCHEMA memory FROM agentmesh_memory_rw;
REVOKE ALL ON SCHEMA memory FROM agentmesh_memory_rw;

DO $$
DECLARE
    role_name text;
BEGIN
    FOREACH role_name IN ARRAY ARRAY['agentmesh_conductor_rw', 'agentmesh_job_rw',
                                      'agentmesh_memory_rw'] LOOP
        BEGIN
            EXECUTE format('DROP ROLE IF EXISTS %I', role_name);
        EXCEPTION WHEN dependent_objects_still_exist THEN
            NULL;  -- still granted something in another database: it stays
        END;
    END LOOP;
END
$$;
