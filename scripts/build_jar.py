"""Build the project's JVM class (jvm/src: a Delta log store) into sparkml_ext/jars/.

    python scripts/build_jar.py          # `make venv` runs it; a no-op when the jar is current

Compiled with the JDK's `javac` against what the Spark session loads at run time: pyspark's
own jars (Hadoop's client API), and Delta's storage module and Hadoop's S3A connector at the
versions the session asks for (`session.DELTA_PACKAGE`, `object_store.HADOOP_AWS_PACKAGE`),
fetched from Maven Central into build/jvm/lib once. The jar is package data: a wheel built
after this carries it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import pyspark

from sparkml_ext.object_store import HADOOP_AWS_PACKAGE, LOG_STORE_JAR
from sparkml_ext.session import DELTA_PACKAGE

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted((REPO / "jvm" / "src").rglob("*.java"))
BUILD = REPO / "build" / "jvm"
MAVEN = "https://repo1.maven.org/maven2"


def maven_jar(group: str, artifact: str, version: str) -> Path:
    """A jar from Maven Central, downloaded into build/jvm/lib once."""
    target = BUILD / "lib" / f"{artifact}-{version}.jar"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        url = f"{MAVEN}/{group.replace('.', '/')}/{artifact}/{version}/{artifact}-{version}.jar"
        with urllib.request.urlopen(url, timeout=120) as response, open(f"{target}.part", "wb") as out:
            shutil.copyfileobj(response, out)
        os.replace(f"{target}.part", target)
    return target


def main() -> int:
    jar = Path(LOG_STORE_JAR)
    if jar.exists() and jar.stat().st_mtime >= max(s.stat().st_mtime for s in SOURCES):
        return 0
    javac = shutil.which("javac", path=f"{os.environ.get('JAVA_HOME', '')}/bin:{os.environ.get('PATH', '')}")
    if javac is None:
        print("building the Delta log store jar needs a JDK's javac (Java 17+) on PATH or in JAVA_HOME",
              file=sys.stderr)
        return 2
    delta_version = DELTA_PACKAGE.rsplit(":", 1)[1]
    group, artifact, version = HADOOP_AWS_PACKAGE.split(":")
    classpath = [str(Path(pyspark.__file__).parent / "jars" / "*"),
                 str(maven_jar("io.delta", "delta-storage", delta_version)),
                 str(maven_jar(group, artifact, version))]
    classes = BUILD / "classes"
    shutil.rmtree(classes, ignore_errors=True)
    subprocess.run([javac, "--release", "17", "-Xlint:all,-path", "-Werror", "-cp", os.pathsep.join(classpath),
                    "-d", str(classes), *map(str, SOURCES)], check=True)
    jar.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(f"{jar}.part", "w", zipfile.ZIP_DEFLATED) as out:
        out.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\r\nCreated-By: scripts/build_jar.py\r\n\r\n")
        for path in sorted(classes.rglob("*.class")):
            out.write(path, path.relative_to(classes).as_posix())
    os.replace(f"{jar}.part", jar)
    print(f"built {jar.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
