"""Adds extra jars (hadoop-aws and the AWS SDK bundle for s3a://) to pyspark's classpath.

Two sources, both optional: *.jar files copied into the build context's notebook/jars/
directory, and the HADOOP_AWS_JARS build argument, a space-separated list of URLs, each
optionally ending in "#sha256=<hex>". With neither, nothing happens.
"""

import hashlib
import os
import pathlib
import shutil
import sys
import urllib.parse
import urllib.request

import pyspark

JARS = pathlib.Path(pyspark.__file__).parent / "jars"
LOCAL = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else None


def main() -> int:
    added = []
    if LOCAL and LOCAL.is_dir():
        for jar in sorted(LOCAL.glob("*.jar")):
            shutil.copy2(jar, JARS / jar.name)
            added.append(jar.name)
    for item in os.environ.get("HADOOP_AWS_JARS", "").split():
        url, _, fragment = item.partition("#")
        name = pathlib.PurePosixPath(urllib.parse.urlparse(url).path).name
        if not name.endswith(".jar"):
            print(f"add-jars: {url} does not name a .jar file", file=sys.stderr)
            return 1
        with urllib.request.urlopen(url, timeout=300) as response:
            data = response.read()
        if fragment.startswith("sha256="):
            digest = hashlib.sha256(data).hexdigest()
            if digest != fragment.removeprefix("sha256=").lower():
                print(f"add-jars: sha256 mismatch for {url}: got {digest}", file=sys.stderr)
                return 1
        (JARS / name).write_bytes(data)
        added.append(name)
    hadoop = sorted(p.name for p in JARS.glob("hadoop-client-api-*.jar"))
    print(f"add-jars: Spark's Hadoop is {hadoop[0] if hadoop else 'unknown'}; "
          f"added: {', '.join(added) or 'nothing'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
