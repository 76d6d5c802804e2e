"""What routing and vouching for one `POST /webhooks` body costs at many channels (not a test).

    python -m tests.bench.partner_routing [--channels 10000] [--bodies 1000]

Every channel has a number, an account (three to a WABA) and Basic-auth credentials; each
body asks for its routing directory and the channels its credentials vouch for, as the
partner route does (`outbox.http.partner_index`).
"""

from __future__ import annotations

import argparse
import base64
import time

from outbox.config import ChannelConfig, Secret
from outbox.domain.models import Dialect
from outbox.http.partner_index import PartnerIndex


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=10_000)
    parser.add_argument("--bodies", type=int, default=1000)
    args = parser.parse_args()
    channels = {
        f"c{n:05d}": ChannelConfig(
            f"c{n:05d}",
            Dialect.CLOUD,
            "https://waba-v2.example",
            Secret("k"),
            phone_number_id=str(100_000 + n),
            waba_id=str(n // 3),
            webhook_username=Secret(f"hooks-{n}"),
            webhook_password=Secret("p" * 24),
        )
        for n in range(args.channels)
    }
    header = "Basic " + base64.b64encode(b"hooks-5:" + b"p" * 24).decode()
    index = PartnerIndex(channels)
    started = time.perf_counter()
    index.current()
    built = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(args.bodies):
        index.current().vouched(header)
    each = (time.perf_counter() - started) / args.bodies
    print(
        f"{args.channels:,} channels: index built in {built * 1000:.1f} ms, "
        f"then {each * 1000:.3f} ms per body ({1 / each:,.0f} bodies/s of one core)"
    )


if __name__ == "__main__":
    main()
