-- The cart service's orders (schema `orders`, set as the search_path by the service's pool).
-- One row per order, written `pending` before the order is published; the statuses after that
-- follow the state machine in services/cart/src/orders/mod.rs.
CREATE TABLE orders (
    -- Handed out by the cart store's counter (Redis INCR), unique across instances.
    order_id         integer PRIMARY KEY CHECK (order_id >= 1),
    -- The message id the warehouse deduplicates on, and the key of the outcome events.
    order_uid        text COLLATE "C" NOT NULL UNIQUE,
    shopping_cart_id integer NOT NULL,
    customer_id      integer NOT NULL,
    -- [{product_id, quantity}], exactly as published.
    items            jsonb NOT NULL,
    status           text NOT NULL
                     CHECK (status IN ('pending', 'placed', 'cancelling', 'fulfilled', 'cancelled')),
    cancel_reason    text CHECK (cancel_reason IN ('customer', 'not_confirmed')),
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- GET /customers/{id}/orders: newest (highest id) first, keyset-paginated on the id.
CREATE INDEX orders_by_customer ON orders (customer_id, order_id DESC);

-- The settler's scan: pending orders are few, so a partial index keeps it cheap.
CREATE INDEX orders_pending ON orders (created_at) WHERE status = 'pending';
