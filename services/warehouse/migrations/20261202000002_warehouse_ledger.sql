-- The warehouse's ledger (schema `warehouse`, set by the connection's search_path).
--
-- One transaction per batch inserts the batch's uids into applied_orders (the winners of
-- ON CONFLICT DO NOTHING are the newly applied orders) and adds the winners' quantities and count
-- to the totals. The totals are split by lane (one per concurrent writer of a process) so two
-- writers never wait for each other's row locks; a read sums the lanes.

-- One row per order ever applied: the dedupe records. Grows by one row per order; applied_at
-- is there for a future retention job. Uids are opaque: byte order ("C") keeps the index and
-- the batch's sort free of locale-aware comparisons.
CREATE TABLE applied_orders (
    order_uid  text COLLATE "C" PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE product_totals (
    lane       smallint NOT NULL,
    product_id integer  NOT NULL,
    quantity   bigint   NOT NULL,
    PRIMARY KEY (product_id, lane)
);

CREATE TABLE order_counts (
    lane             smallint PRIMARY KEY,
    orders_processed bigint   NOT NULL
);
