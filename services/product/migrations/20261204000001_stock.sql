-- Stock and reservations (schema `catalog`). Unlike products, both change all the time: they are
-- never cached, and every change locks the rows it touches (see src/store/postgres_stock.rs).

-- One row per product, created in the same statement as the product.
CREATE TABLE stock (
    product_id integer PRIMARY KEY REFERENCES products (product_id),
    -- Free to reserve.
    on_hand    bigint NOT NULL CHECK (on_hand >= 0),
    -- Held by reservations that are neither sold nor released.
    reserved   bigint NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    -- Taken from stock by fulfilled orders.
    sold       bigint NOT NULL DEFAULT 0 CHECK (sold >= 0),
    -- Units fulfilled beyond what was on hand (a reservation released by its timeout before the
    -- warehouse fulfilled the order). Not part of `sold`: see the invariant below.
    oversold   bigint NOT NULL DEFAULT 0 CHECK (oversold >= 0),
    -- The initial stock plus every adjustment.
    received   bigint NOT NULL CHECK (received >= 0),
    CONSTRAINT stock_balanced CHECK (on_hand + reserved + sold = received)
);

-- Products created before stock existed get the default of SEED_STOCK at the time of writing.
INSERT INTO stock (product_id, on_hand, received)
SELECT product_id, 1000000, 1000000 FROM products;

CREATE TABLE reservations (
    -- Byte order ("C"): the uids are compared, sorted and locked in one cheap, stable order.
    order_uid   text COLLATE "C" PRIMARY KEY
                CHECK (order_uid <> '' AND char_length(order_uid) <= 64),
    status      text NOT NULL CHECK (status IN ('held', 'confirmed', 'released', 'committed')),
    -- The items, normalised (one per product, by product id), as two parallel arrays.
    product_ids integer[] NOT NULL,
    quantities  integer[] NOT NULL
                CHECK (cardinality(quantities) = cardinality(product_ids)
                       AND cardinality(product_ids) >= 1),
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- When the status last changed; for a held reservation, since when it is held.
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The timeout sweep: held reservations, oldest first.
CREATE INDEX reservations_held_since ON reservations (updated_at) WHERE status = 'held';
