-- Audit queries that combine a user with a type filter read the type
-- from the user's index instead of from the row. Before, `--user 7
-- --type auth.failed` walked every row of user 7 newest first and loaded
-- each one to compare its type: for a type the user rarely has, that is
-- thousands of scattered row reads per page (p99 85.6 ms over 1M events).
--
-- The index gains `kind` after `seq`, so it still yields seq order
-- (newest-first pages never sort) and SQLite checks `kind = ?`, or the
-- category expression, against the index entry before it loads a row.
-- Widening replaces the old index rather than adding one: an eighth
-- B-tree would slow every append, a wider leaf costs bytes only. (An
-- index `(actor_user, kind, seq)` would seek straight to one type, but
-- helps exact types only and is one more B-tree per append.) The
-- resource and customer indexes stay narrow: widening them too cost
-- about 12% of append CPU in bench/audit.sh, and their combined queries
-- were already well under the 50 ms target.
DROP INDEX audit_events_actor;
CREATE INDEX audit_events_actor ON audit_events (actor_user, seq, kind);
