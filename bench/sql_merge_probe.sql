-- The statement of bench/sql_merge_probe.py (see its docstring): a measurement prototype of
-- the plain subset of the merge, not a product path. One row per update: update_id, status,
-- changed_fields, duplicate.
WITH u AS (
  SELECT x.* FROM jsonb_to_recordset(CAST(%(updates)s AS jsonb)) AS x(
    update_id varchar, account_id varchar, contact_id varchar, seq bigint,
    received_at timestamptz, patch jsonb, event_id varchar)
),
locked AS (
  SELECT c.id, c.account_id, c.name, c.email, c.phone, c.company, c.position, c.source,
         c.linkedin_url, c.tags, c.custom_fields, c.external_ids, c.field_seqs, c.created_at
  FROM contacts c
  WHERE c.id = ANY(CAST(%(contact_ids)s AS varchar[]))
  ORDER BY c.id FOR UPDATE
),
done AS (
  SELECT r.update_id, r.status FROM update_records r
  WHERE r.update_id = ANY(CAST(%(update_ids)s AS varchar[]))
    AND r.status IN ('applied', 'noop', 'not_found', 'conflict', 'created')
),
uu AS (
  SELECT u.*, d.status AS done_status,
         CASE WHEN d.status IS NOT NULL THEN 'dup'
              WHEN l.id IS NULL OR l.account_id <> u.account_id THEN 'not_found'
              ELSE 'merge' END AS kind
  FROM u LEFT JOIN done d USING (update_id) LEFT JOIN locked l ON l.id = u.contact_id
),
-- the plain fields some update of the batch writes, per contact
touched AS (
  SELECT DISTINCT uu.contact_id, k.f FROM uu, jsonb_object_keys(uu.patch) AS k(f)
  WHERE uu.kind = 'merge'
),
-- one row per (update to merge, field touched in the batch for its contact): whether it
-- writes the field (a newer sequence than the stored one; within the batch, updates go in
-- sequence order so a later one of the batch is always newer than an earlier), its value,
-- and the stored value
m AS (
  SELECT uu.update_id, uu.contact_id, uu.seq, t.f,
         uu.patch ? t.f AND uu.seq > coalesce((l.field_seqs ->> t.f)::bigint, -1) AS wins,
         uu.patch -> t.f AS v,
         coalesce(CASE t.f WHEN 'name' THEN to_jsonb(l.name) WHEN 'phone' THEN to_jsonb(l.phone)
                  WHEN 'company' THEN to_jsonb(l.company)
                  WHEN 'position' THEN to_jsonb(l.position) ELSE l.tags END, 'null') AS stored
  FROM uu JOIN touched t USING (contact_id) JOIN locked l ON l.id = uu.contact_id
  WHERE uu.kind = 'merge'
),
-- w: the values written to the field up to this update, in sequence order
m2 AS (
  SELECT m.*, array_agg(v) FILTER (WHERE wins) OVER (
           PARTITION BY contact_id, f ORDER BY seq ROWS UNBOUNDED PRECEDING) AS w
  FROM m
),
m3 AS (
  SELECT update_id, contact_id, seq, f, wins, v,
         CASE WHEN cardinality(w) > 1 THEN w[cardinality(w) - 1] ELSE stored END AS before,
         CASE WHEN cardinality(w) > 0 THEN w[cardinality(w)] ELSE stored END AS after
  FROM m2
),
per_u AS (
  -- input in field order (the aggregates keep it; an ORDER BY inside each aggregate would
  -- sort every group apart on PostgreSQL 15)
  SELECT update_id, contact_id, seq,
         json_object_agg(f, json_build_object('old', before, 'new', after))
           FILTER (WHERE wins AND before <> after) AS changes,
         coalesce(array_agg(f) FILTER (WHERE wins AND before <> after), '{}') AS changed_fields,
         jsonb_object_agg(f, after) AS state
  FROM (SELECT * FROM m3 ORDER BY update_id,
          array_position('{name,phone,company,position,tags}'::text[], f)) o
  GROUP BY update_id, contact_id, seq
),
-- per contact: the last value written to each field and its sequence, whether any changed
per_c AS (
  SELECT contact_id, jsonb_object_agg(f, last_v) FILTER (WHERE s IS NOT NULL) AS vals,
         jsonb_object_agg(f, s) FILTER (WHERE s IS NOT NULL) AS written, bool_or(ch) AS changed
  FROM (
    SELECT contact_id, f, (array_agg(v) FILTER (WHERE wins))[1] AS last_v,
           max(seq) FILTER (WHERE wins) AS s, bool_or(wins AND before <> after) AS ch
    FROM (SELECT * FROM m3 ORDER BY contact_id, f, seq DESC) o GROUP BY contact_id, f
  ) x GROUP BY contact_id HAVING bool_or(s IS NOT NULL)
),
updated AS (
  UPDATE contacts c SET
    name = CASE WHEN p.vals ? 'name' THEN p.vals ->> 'name' ELSE l.name END,
    phone = CASE WHEN p.vals ? 'phone' THEN p.vals ->> 'phone' ELSE l.phone END,
    company = CASE WHEN p.vals ? 'company' THEN p.vals ->> 'company' ELSE l.company END,
    position = CASE WHEN p.vals ? 'position' THEN p.vals ->> 'position' ELSE l.position END,
    tags = coalesce(p.vals -> 'tags', l.tags),
    field_seqs = l.field_seqs || p.written,
    updated_at = CASE WHEN p.changed THEN %(now)s ELSE c.updated_at END
  FROM per_c p JOIN locked l ON l.id = p.contact_id
  WHERE c.id = p.contact_id
  RETURNING 1
),
recorded AS (
  INSERT INTO update_records (update_id, account_id, contact_id, seq, status, received_at,
                              applied_at, changed_fields, error)
  SELECT uu.update_id, uu.account_id, uu.contact_id, uu.seq,
         CASE WHEN uu.kind = 'not_found' THEN 'not_found'
              WHEN p.changes IS NOT NULL THEN 'applied' ELSE 'noop' END,
         uu.received_at, %(now)s, coalesce(to_json(p.changed_fields), '[]'),
         CASE WHEN uu.kind = 'not_found'
              THEN json '{"code":"NOT_FOUND","message":"Contact not found."}' END
  FROM uu LEFT JOIN per_u p USING (update_id)
  WHERE uu.kind <> 'dup'
  ORDER BY uu.seq
  -- a replayed dead letter's `failed` record is replaced
  ON CONFLICT (update_id) DO UPDATE SET
    account_id = excluded.account_id, contact_id = excluded.contact_id, seq = excluded.seq,
    status = excluded.status, received_at = excluded.received_at,
    applied_at = excluded.applied_at, changed_fields = excluded.changed_fields,
    error = excluded.error
  WHERE update_records.status = 'failed'
  RETURNING 1
),
published AS (
  INSERT INTO outbox (event_id, payload, created_at)
  SELECT uu.event_id, json_build_object(
           'id', uu.event_id, 'type', 'contact.updated', 'account_id', uu.account_id,
           'contact_id', uu.contact_id, 'update_id', uu.update_id, 'sequence', uu.seq,
           'occurred_at', %(now_text)s::text, 'changes', p.changes,
           'contact', json_build_object(
             'id', l.id, 'name', coalesce(p.state -> 'name', to_jsonb(l.name)),
             'email', l.email,
             'phone', coalesce(p.state -> 'phone', to_jsonb(l.phone)),
             'company', coalesce(p.state -> 'company', to_jsonb(l.company)),
             'position', coalesce(p.state -> 'position', to_jsonb(l.position)),
             'source', l.source,
             'linkedin_url', l.linkedin_url, 'tags', coalesce(p.state -> 'tags', l.tags),
             'custom_fields', l.custom_fields, 'external_ids', l.external_ids,
             'created_at',
             to_char(l.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
             'updated_at', %(now_text)s::text)
         )::text, %(now)s
  FROM uu JOIN per_u p USING (update_id) JOIN locked l ON l.id = uu.contact_id
  WHERE p.changes IS NOT NULL
  ORDER BY uu.seq
  RETURNING 1
)
SELECT uu.update_id,
       CASE WHEN uu.kind = 'dup' THEN uu.done_status WHEN uu.kind = 'not_found' THEN 'not_found'
            WHEN p.changes IS NOT NULL THEN 'applied' ELSE 'noop' END AS status,
       coalesce(p.changed_fields, '{}') AS changed_fields,
       uu.kind = 'dup' AS duplicate
FROM uu LEFT JOIN per_u p USING (update_id)
ORDER BY uu.seq
