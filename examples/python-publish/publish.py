#!/usr/bin/env python3
"""Publish one message to a Tidings channel with the `cent` library.

Tidings speaks the Centrifugo server HTTP API, so the official Python API
client works unchanged. Every option can come from a flag or from the
environment:

    --api-url   TIDINGS_API_URL   (default http://localhost:8000/api)
    --api-key   TIDINGS_API_KEY   (required)
    --channel   TIDINGS_CHANNEL   (required)
    --message   TIDINGS_MESSAGE   (required)

The message is delivered to subscribers as {"text": MESSAGE}; pass --json to
send MESSAGE as raw JSON instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from cent import CentError, Client, PublishRequest


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Publish a message to a Tidings channel.")
    parser.add_argument("--api-url", default=os.environ.get("TIDINGS_API_URL", "http://localhost:8000/api"),
                        help="server API base URL (env TIDINGS_API_URL)")
    parser.add_argument("--api-key", default=os.environ.get("TIDINGS_API_KEY"),
                        help="server API key (env TIDINGS_API_KEY)")
    parser.add_argument("--channel", default=os.environ.get("TIDINGS_CHANNEL"),
                        help="channel to publish to (env TIDINGS_CHANNEL)")
    parser.add_argument("--message", default=os.environ.get("TIDINGS_MESSAGE"),
                        help="message text (env TIDINGS_MESSAGE)")
    parser.add_argument("--json", action="store_true",
                        help="treat the message as a JSON document and publish it as it is")
    args = parser.parse_args(argv)
    for name in ("api_key", "channel", "message"):
        if not getattr(args, name):
            flag = "--" + name.replace("_", "-")
            parser.error(f"{flag} is required (or set TIDINGS_{name.upper()})")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.json:
        try:
            data = json.loads(args.message)
        except json.JSONDecodeError as err:
            print(f"--message is not valid JSON: {err}", file=sys.stderr)
            return 2
    else:
        data = {"text": args.message}

    with Client(args.api_url.rstrip("/"), args.api_key, timeout=10.0) as client:
        try:
            result = client.publish(PublishRequest(channel=args.channel, data=data))
        except CentError as err:
            print(f"publish failed: {err!r}", file=sys.stderr)
            return 1
    print(f"published to {args.channel}: offset={result.offset} epoch={result.epoch or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
