import json
import logging

from ojs_amqp.logs import JsonFormatter, redact


def test_json_lines_carry_the_message_level_and_extra_fields() -> None:
    record = logging.makeLogRecord(
        {"name": "ojs_amqp.events", "levelname": "DEBUG", "msg": "job.completed %s",
         "args": ("019a",), "job_id": "019a", "queue": "mail"}
    )  # fmt: skip
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "job.completed 019a"
    assert line["level"] == "DEBUG" and line["logger"] == "ojs_amqp.events"
    assert line["job_id"] == "019a" and line["queue"] == "mail"
    assert line["time"].endswith("+00:00")


def test_passwords_are_redacted_from_broker_urls() -> None:
    assert redact("amqp://app:s3cret@rabbit:5672/vh") == "amqp://app:***@rabbit:5672/vh"
    assert "s3cret" not in redact("amqps://u:s3cret@h/")
    # TLS URLs keep port and query (aio-pika's cafile/certfile options), never the password
    tls = redact("amqps://ojs:pw-9f8e@localhost:5671/vh?cafile=/etc/ca.pem&heartbeat=30")
    assert tls == "amqps://ojs:***@localhost:5671/vh?cafile=/etc/ca.pem&heartbeat=30"
    assert redact("amqp://rabbit/") == "amqp://rabbit/"
