//! Integration tests against the real RabbitMQ at 127.0.0.1:5672, each on its own queue.

mod consume;
mod helpers;
mod process;
mod recovery;
