/*
 * Summary of a run.sh results file (psql -f report.sql < FILE).  Every figure is
 * first computed against the no-trigger run of the same round and only then
 * reduced to a median over rounds: the machine drifts between rounds, and a
 * ratio of two medians taken at different times would carry that drift.
 * Two measures: throughput (wall clock), and the CPU time the run's backend
 * used, which a busy machine disturbs much less (it leaves out the time
 * spent waiting for a CPU).
 */
\set ON_ERROR_STOP on
\pset footer off

CREATE TEMP TABLE result (
    round        integer,
    workload     text,
    variant      text,
    rows_per_tx  integer,
    tps          float8,
    transactions bigint,
    captured     bigint,
    cpu_us       bigint
);
\copy result FROM pstdin

CREATE TEMP VIEW per_round AS
SELECT r.round, r.workload, r.variant, r.tps,
       r.tps / n.tps AS ratio,
       -- time per transaction above the baseline, spread over the rows it changed
       (1e6 / r.tps - 1e6 / n.tps) / r.rows_per_tx AS added_us,
       r.cpu_us::float8 / (r.transactions * r.rows_per_tx) AS cpu_us_row,
       r.cpu_us::float8 / (r.transactions * r.rows_per_tx)
           - n.cpu_us::float8 / (n.transactions * n.rows_per_tx) AS added_cpu_us,
       array_position(ARRAY['update_1row', 'insert_1row', 'update_bulk', 'insert_bulk'], r.workload) AS w_order,
       array_position(ARRAY['none', 'plpgsql', 'pgq', 'plpgsql_stmt', 'connect_guard'], r.variant) AS v_order
  FROM result r
  JOIN result n ON n.round = r.round AND n.workload = r.workload AND n.variant = 'none';

\echo
\echo 'Throughput and added cost per captured row (medians over rounds)'
SELECT workload,
       variant,
       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY tps)::numeric, 1) AS "tps (median)",
       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ratio)::numeric, 3) AS "ratio to none",
       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY added_us)::numeric, 2) AS "added µs/row",
       round(min(added_us)::numeric, 2) || ' .. ' || round(max(added_us)::numeric, 2) AS "added µs/row, range"
  FROM per_round
 GROUP BY workload, variant, w_order, v_order
 ORDER BY w_order, v_order;

-- connect_guard's added cost as a fraction of each other trigger's, per
-- round, then summed up over rounds; once for each measure (wall: the added
-- µs/row from throughput, cpu: the added backend CPU µs/row)
CREATE TEMP VIEW fraction AS
WITH added AS (
    SELECT round, workload, w_order, variant, 'wall' AS measure, added_us AS added FROM per_round
    UNION ALL
    SELECT round, workload, w_order, variant, 'cpu', added_cpu_us FROM per_round
), f AS (
    SELECT cg.measure, cg.workload, cg.w_order,
           cg.added / st.added AS of_stmt,
           cg.added / pl.added AS of_plpgsql,
           cg.added / pq.added AS of_pgq
      FROM added cg
      JOIN added st ON (st.measure, st.round, st.workload, st.variant) = (cg.measure, cg.round, cg.workload, 'plpgsql_stmt')
      JOIN added pl ON (pl.measure, pl.round, pl.workload, pl.variant) = (cg.measure, cg.round, cg.workload, 'plpgsql')
      JOIN added pq ON (pq.measure, pq.round, pq.workload, pq.variant) = (cg.measure, cg.round, cg.workload, 'pgq')
     WHERE cg.variant = 'connect_guard'
)
SELECT measure, workload, w_order,
       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY of_stmt)::numeric, 2) AS "÷ plpgsql_stmt",
       round(min(of_stmt)::numeric, 2) || ' .. ' || round(max(of_stmt)::numeric, 2) AS "÷ plpgsql_stmt, range",
       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY of_plpgsql)::numeric, 2) AS "÷ plpgsql",
       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY of_pgq)::numeric, 2) AS "÷ pgq",
       CASE
           WHEN workload NOT LIKE '%bulk' THEN 'no target (single-row)'
           WHEN percentile_cont(0.5) WITHIN GROUP (ORDER BY of_stmt) <= 0.33 THEN 'meets aim (<= 0.33)'
           WHEN percentile_cont(0.5) WITHIN GROUP (ORDER BY of_stmt) <= 0.5 THEN 'meets target (<= 0.5), misses aim (0.33)'
           ELSE 'MISSES target (<= 0.5)'
       END AS verdict
  FROM f
 GROUP BY measure, workload, w_order;

\echo 'From throughput: connect_guard''s added µs/row as a fraction of the others'' (median of per-round fractions;'
\echo 'target for the bulk workloads: <= 0.5 of the PL/pgSQL statement-level trigger''s, aim 0.33)'
SELECT workload, "÷ plpgsql_stmt", "÷ plpgsql_stmt, range", "÷ plpgsql", "÷ pgq", verdict
  FROM fraction WHERE measure = 'wall' ORDER BY w_order;

\echo 'Backend CPU time per row, and added over no trigger (medians over rounds)'
SELECT workload,
       variant,
       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY cpu_us_row)::numeric, 2) AS "CPU µs/row",
       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY added_cpu_us)::numeric, 2) AS "added CPU µs/row",
       round(min(added_cpu_us)::numeric, 2) || ' .. ' || round(max(added_cpu_us)::numeric, 2) AS "added CPU µs/row, range"
  FROM per_round
 GROUP BY workload, variant, w_order, v_order
 ORDER BY w_order, v_order;

\echo 'The same from backend CPU time: connect_guard''s added CPU µs/row as a fraction of the others'''
SELECT workload, "÷ plpgsql_stmt", "÷ plpgsql_stmt, range", "÷ plpgsql", "÷ pgq", verdict
  FROM fraction WHERE measure = 'cpu' ORDER BY w_order;

-- a trigger that silently skipped rows would look fast: say so loudly
SELECT count(*) AS miscounted FROM result
 WHERE variant <> 'none' AND captured <> transactions * rows_per_tx \gset
\if :miscounted
\echo 'WARNING: some runs captured a different number of rows than they changed:'
SELECT round, workload, variant, transactions * rows_per_tx AS changed, captured
  FROM result
 WHERE variant <> 'none' AND captured <> transactions * rows_per_tx
 ORDER BY round, workload, variant;
\else
\echo 'Check: every variant captured exactly one log row per changed row in every run.'
\endif
