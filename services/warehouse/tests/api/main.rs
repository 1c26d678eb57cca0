//! Integration tests against the real RabbitMQ at 127.0.0.1:5672 (each test on its own queue)
//! and the real PostgreSQL at 127.0.0.1:5432 (each test on its own database).

mod amqps;
mod auth;
mod cancel;
mod consume;
mod durable;
mod helpers;
mod ledger;
mod process;
mod recovery;
mod secrets;
