#!/usr/bin/env python3
"""The script a user would write instead of `pipeline`: the yardstick of scripts/bench.py.

    python scripts/baseline_openai.py docs.jsonl out.parquet --url http://127.0.0.1:8080 \\
        --model cohere-embed-multilingual --concurrency 8

Written the way a competent user would write it, with the official ``openai``
SDK pointed at an OpenAI-compatible endpoint: read the JSONL, cut it into
batches of 96, send them all through ``asyncio.gather`` under an
``asyncio.Semaphore``, and write one Parquet file with pyarrow at the end.
Rate limits are left to the SDK's own retries (``max_retries``, honouring
``Retry-After``). The SDK asks for base64 by default and decodes it into
Python float lists itself; ``--encoding-format float`` asks for JSON numbers
instead. There is no chunking, resuming, per-record error handling or
sharding: that is the point of the comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from openai import AsyncOpenAI


async def embed_all(args: argparse.Namespace, texts: list[str]) -> tuple[list, int]:
    client = AsyncOpenAI(
        base_url=args.url.rstrip("/") + "/v1",
        api_key=args.api_key or os.environ.get("EMBEDDING_KEY") or "none",
        max_retries=args.max_retries,
        timeout=args.timeout,
    )
    semaphore = asyncio.Semaphore(args.concurrency)
    extra = {"encoding_format": args.encoding_format} if args.encoding_format else {}

    async def one(batch: list[str]):
        async with semaphore:
            return await client.embeddings.create(
                model=args.model, input=batch, extra_body={"input_type": args.input_type}, **extra
            )

    batches = [texts[i : i + args.batch_size] for i in range(0, len(texts), args.batch_size)]
    try:
        responses = await asyncio.gather(*(one(b) for b in batches))
    finally:
        await client.close()
    vectors: list = []
    tokens = 0
    for response in responses:
        vectors.extend(item.embedding for item in sorted(response.data, key=lambda d: d.index))
        tokens += response.usage.total_tokens
    return vectors, tokens


def vector_column(vectors: list) -> pa.Array:
    if vectors and isinstance(vectors[0], str):  # base64 asked for explicitly: the SDK leaves it to us
        matrix = np.stack([np.frombuffer(base64.b64decode(v), "<f4") for v in vectors])
        return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])
    return pa.array(vectors, pa.list_(pa.float32()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="JSONL file, one {id, text} object a line")
    parser.add_argument("output", help="Parquet file to write")
    parser.add_argument("--url", required=True, help="base URL of the API (without /v1)")
    parser.add_argument("--api-key", help="default: $EMBEDDING_KEY")
    parser.add_argument("--model", default="cohere-embed-multilingual")
    parser.add_argument("--input-type", default="search_document")
    parser.add_argument("--encoding-format", choices=["base64", "float"],
                        help="default: the SDK's (it asks for base64 and decodes it to float lists); "
                             "base64: ask for it explicitly and decode with numpy (the tuned script)")
    parser.add_argument("--batch-size", type=int, default=96)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-retries", type=int, default=2, help="the SDK's retries (default 2, its own)")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--id-field", default="id")
    parser.add_argument("--text-field", default="text")
    args = parser.parse_args()

    started = time.perf_counter()
    ids: list[str] = []
    texts: list[str] = []
    with open(args.input, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                ids.append(str(record[args.id_field]))
                texts.append(record[args.text_field])
    vectors, tokens = asyncio.run(embed_all(args, texts))
    table = pa.table({
        "id": pa.array(ids, pa.string()),
        "text": pa.array(texts, pa.string()),
        "embedding": vector_column(vectors),
    })
    pq.write_table(table, args.output, compression="zstd")
    print(json.dumps({"rows": table.num_rows, "total_tokens": tokens,
                      "wall_s": round(time.perf_counter() - started, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
