"""ojs-amqp: an Open Job Spec job system on a plain RabbitMQ."""

__version__ = "0.1.0"
__all__ = ["__version__"]
