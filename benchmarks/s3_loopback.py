"""S3 on loopback: flash.load_dict("s3://...") against the test server's own rate for
plain GETs of the same objects (botocore get_object, and curl of presigned URLs), in one
run, median of --runs. The server is moto's S3 server (`pip install "moto[server]"`),
whose Range GETs are slow: it, not the loader, is the limit here; keep the checkpoint
small.

    python benchmarks/s3_loopback.py --mib 64 --runs 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=64, help="checkpoint size (float32 tensors of 4 MiB)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--port", type=int, default=5055)
    args = ap.parse_args()

    import botocore.session
    import torch
    from moto.server import ThreadedMotoServer

    from flashtensors import flash

    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://127.0.0.1:{args.port}")
    server = ThreadedMotoServer(port=args.port, verbose=False)
    server.start()
    try:
        s3 = botocore.session.get_session().create_client("s3")
        s3.create_bucket(Bucket="bench")
        with tempfile.TemporaryDirectory() as root:
            gen = torch.Generator().manual_seed(0)
            flash.save_dict({f"w{i}": torch.randn(1024, 1024, generator=gen) for i in range(args.mib // 4)}, root,
                            overwrite=True)
            keys = []
            for name in sorted(os.listdir(root)):
                with open(os.path.join(root, name), "rb") as f:
                    s3.put_object(Bucket="bench", Key=f"m/{name}", Body=f.read())
                keys.append(f"m/{name}")
            size = sum(os.path.getsize(os.path.join(root, n)) for n in os.listdir(root))
        times: dict = {"botocore get_object": [], "curl (presigned URLs)": [], "flash.load_dict(s3://)": []}
        for _ in range(args.runs):
            start = time.perf_counter()
            for key in keys:
                s3.get_object(Bucket="bench", Key=key)["Body"].read()
            times["botocore get_object"].append(time.perf_counter() - start)
            urls = [s3.generate_presigned_url("get_object", Params={"Bucket": "bench", "Key": k}) for k in keys]
            start = time.perf_counter()
            subprocess.run(["curl", "-sf", *[a for u in urls for a in (u, "-o", "/dev/null")]], check=True)
            times["curl (presigned URLs)"].append(time.perf_counter() - start)
            start = time.perf_counter()
            flash.load_dict("s3://bench/m", "cpu")
            times["flash.load_dict(s3://)"].append(time.perf_counter() - start)
    finally:
        server.stop()
    print(f"{size / 1e6:.0f} MB on moto's S3 server (loopback), median of {args.runs}:")
    for name, seconds in times.items():
        m = statistics.median(seconds)
        print(f"  {name:24} {m:.3f} s  {size / 1e9 / m:.2f} GB/s")


if __name__ == "__main__":
    main()
