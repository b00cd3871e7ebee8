"""The RabbitMQ adapter: the only package that imports aio_pika."""
