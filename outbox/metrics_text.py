"""`/metrics` as text: what prometheus_client's `generate_latest` writes, byte for byte (a test
holds the two equal over every family `Metrics` makes), in half its time.

At 10,000 channels a scrape is some 120,000 lines, and `generate_latest` validates and escapes
every label name of every line again and formats each value through a general routine: 599 ms
of CPU a scrape against 311 here (`python -m tests.bench.metrics_scale`), on a worker thread
that shares the interpreter with the sender. Here names are escaped once per name, a label
value only when it holds a character that needs it, and the values most series have (0 and 1)
are written without the general routine.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache

from prometheus_client.openmetrics.exposition import escape_label_name, escape_metric_name
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

# OpenMetrics types as the Prometheus text format names them, and the suffix of the name.
_TYPES = {
    "counter": ("counter", "_total"),
    "info": ("gauge", "_info"),
    "stateset": ("gauge", ""),
    "gaugehistogram": ("histogram", ""),
    "unknown": ("untyped", ""),
}
# OpenMetrics samples the text format puts in a gauge family of their own, after the rest.
_APART = ("_created", "_gsum", "_gcount")
_go_float: Callable[[float], str] = floatToGoString  # the library's, untyped


@cache
def _metric_name(name: str) -> str:
    return escape_metric_name(name)


@cache
def _label_name(name: str) -> str:
    return escape_label_name(name)


def _label_value(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


def _value(value: float) -> str:
    if value == 0.0:  # most series of idle channels; -0.0 keeps its sign, as Go writes it
        return "0.0" if math.copysign(1.0, value) > 0 else "-0.0"
    return "1.0" if value == 1.0 else _go_float(value)


def _line(sample: Sample) -> str:
    labels = sample.labels
    if not labels:
        text = ""
    elif len(labels) == 1:
        [(name, value)] = labels.items()
        text = f'{{{_label_name(name)}="{_label_value(value)}"}}'
    else:
        pairs = sorted(labels.items())
        text = "{" + ",".join(f'{_label_name(n)}="{_label_value(v)}"' for n, v in pairs) + "}"
    stamp = "" if sample.timestamp is None else f" {int(float(sample.timestamp) * 1000):d}"
    return f"{_metric_name(sample.name)}{text} {_value(sample.value)}{stamp}\n"


def _help(name: str, documentation: str) -> str:
    text = documentation.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {_metric_name(name)} {text}\n"


def render(registry: Collector) -> bytes:
    """The registry in the Prometheus text format (version 0.0.4)."""
    output: list[str] = []
    for metric in registry.collect():
        kind, suffix = _TYPES.get(metric.type, (metric.type, ""))
        name = metric.name + suffix
        output.append(_help(name, metric.documentation))
        output.append(f"# TYPE {_metric_name(name)} {kind}\n")
        apart: dict[str, list[str]] = {}
        own = {metric.name + s: s for s in _APART}
        for sample in metric.samples:
            where = own.get(sample.name)
            if where is None:
                output.append(_line(sample))
            else:
                apart.setdefault(where, []).append(_line(sample))
        for where, lines in sorted(apart.items()):
            output.append(_help(metric.name + where, metric.documentation))
            output.append(f"# TYPE {_metric_name(metric.name + where)} gauge\n")
            output.extend(lines)
    return "".join(output).encode("utf-8")
