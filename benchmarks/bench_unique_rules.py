"""CPU of the unique-job rules a push would add, against parsing the push itself.

Run: `python benchmarks/bench_unique_rules.py`. Prints, in one run, the time of
`parse_enqueue` on a typical body (the baseline every push pays already), of the unique
policy's validation plus the RFC 8785 fingerprint, and their ratio. It measures the pure
rules only; the store's check-and-insert is measured once it is wired (issue #17's push
benchmark).
"""

from __future__ import annotations

import timeit

from ojs_amqp.core.envelope import parse_enqueue
from ojs_amqp.core.ids import UUIDv7Generator
from ojs_amqp.core.unique import job_fingerprint, parse_unique_policy

BODY = {
    "type": "email.send",
    "args": [{"to": "ana@example.com", "template": "welcome", "locale": "pt-BR", "user_id": 42}],
    "meta": {"tenant_id": "acme", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"},
    "options": {"queue": "email", "priority": 10, "tags": ["onboarding"]},
}
POLICY = {"keys": ["type", "queue", "args"], "args_keys": ["user_id", "template"],
          "period": "PT1H", "on_conflict": "reject"}  # fmt: skip
WHOLE_ARGS = {"keys": ["type", "args", "meta"], "meta_keys": ["tenant_id"]}


def main() -> None:
    ids = UUIDv7Generator()
    now = 1_700_000_000_000
    job = parse_enqueue(BODY, now_ms=now, new_id=ids.new(now))
    runs = 20_000

    def best(fn: object) -> float:
        return min(timeit.repeat(fn, number=runs, repeat=5)) / runs * 1e6  # type: ignore[arg-type]

    base = best(lambda: parse_enqueue(BODY, now_ms=now, new_id=ids.new(now)))
    selected = best(lambda: job_fingerprint(parse_unique_policy(POLICY), job))
    whole = best(lambda: job_fingerprint(parse_unique_policy(WHOLE_ARGS), job))
    print(f"parse_enqueue (baseline)          {base:7.1f} us")
    print(
        f"policy + fingerprint, args_keys   {selected:7.1f} us  ({selected / base:.2f}x baseline)"
    )
    print(f"policy + fingerprint, whole args  {whole:7.1f} us  ({whole / base:.2f}x baseline)")


if __name__ == "__main__":
    main()
