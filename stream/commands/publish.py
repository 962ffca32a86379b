"""``dfstream bench publish``: the Redis publisher's messages/s and publish latency."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from stream.cli import bench_app, console, fail


@bench_app.command("publish")
def bench_publish(
    messages: Annotated[int, typer.Option(min=1000, help="Messages in the throughput run.")] = (
        200_000
    ),
    streams: Annotated[int, typer.Option(min=1, max=10_000, help="Streams the messages come "
                                         "from.")] = 100,
    latency_rate: Annotated[float, typer.Option(min=1, help="Offered msg/s for the latency "
                                                "run.")] = 50_000,
    latency_seconds: Annotated[float, typer.Option(min=0.2, max=60, help="Length of each "
                                                   "latency run.")] = 2.0,
    reference_requests: Annotated[int, typer.Option(min=1000, help="PUBLISH requests per "
                                                    "redis-benchmark run.")] = 200_000,
    json_out: Annotated[bool, typer.Option("--json", help="Print only the JSON result.")] = False,
) -> None:
    """Score messages/s and p99 publish latency to a local redis-server, JSON encoding
    included, against redis-benchmark PUBLISH on the same server in the same run."""
    from stream.publish_bench import BenchConfig, run
    from stream.redis_server import RedisServerError

    cfg = BenchConfig(messages=messages, streams=streams, latency_rate=latency_rate,
                      latency_seconds=latency_seconds,
                      redis_benchmark_requests=reference_requests)
    try:
        result = run(cfg, progress=lambda step: console.print(f"[dim]bench publish:[/dim] {step}"))
    except (RedisServerError, RuntimeError) as exc:
        raise fail(str(exc)) from None
    if json_out:
        typer.echo(json.dumps(result, indent=2))
        return
    console.print_json(data=result)
    verdict = "[green]meets[/green]" if result["meets_targets"] else "[red]misses[/red]"
    console.print(
        f"{result['messages_per_s']:,} msg/s, p99 {result['p99_ms']} ms at "
        f"{latency_rate:,.0f} msg/s: {verdict} the targets (>= 50,000 msg/s, p99 <= 2 ms); "
        f"{result['ratio_vs_redis_benchmark']}x redis-benchmark unpipelined"
    )
