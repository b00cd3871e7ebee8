"""The native AMQP binding's edge: control queues, submissions and binding retries."""
