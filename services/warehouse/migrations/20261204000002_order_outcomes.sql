-- Cancellations: every order uid gets exactly one outcome, the first of its order and a cancel
-- for it to be applied. applied_orders becomes the outcome record of each uid (the unique index
-- on order_uid still picks the one winner, now also between an order and its cancel).
--
-- Existing rows were all fulfilled orders: the default keeps them so, and keeps a warehouse of
-- the previous version that is still running (it inserts only order_uid) recording fulfilments
-- correctly during a rolling upgrade. ADD COLUMN with a constant default rewrites nothing.
ALTER TABLE applied_orders
    ADD COLUMN outcome    text NOT NULL DEFAULT 'fulfilled',
    -- The winning cancel's reason (customer, not_confirmed); NULL for a fulfilment.
    ADD COLUMN reason     text,
    -- The id the customer saw; NULL on rows written before this migration.
    ADD COLUMN order_id   integer,
    -- The fulfilled order's message (JSON), so a cancel that loses can announce the order it
    -- lost to; NULL for a cancellation and on rows written before this migration.
    ADD COLUMN order_body text;

-- NOT VALID: enforced for every new row without scanning (and locking for the scan) the rows
-- already there, which all hold the default.
ALTER TABLE applied_orders
    ADD CONSTRAINT applied_orders_outcome_check
    CHECK (outcome IN ('fulfilled', 'cancelled')) NOT VALID;

-- Cancelled orders per lane, next to the fulfilled ones.
ALTER TABLE order_counts
    ADD COLUMN orders_cancelled bigint NOT NULL DEFAULT 0;
