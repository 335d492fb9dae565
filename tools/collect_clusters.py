"""Copy the error clusters of `faceattr cluster RUN` into a result file, without the per-face
ids and the silhouette curve, with the command that wrote them (rebuilt from the split and seed
that clusters.json records):
`python tools/collect_clusters.py runs/run-cpu60/model/clusters/clusters.json results/clusters_cpu60.json`.
A third argument, when given, is the command as it was run (one with options clusters.json does
not record, such as --data)."""

import json
import sys
from pathlib import Path

from faceattr.atomic import write_json


def main() -> None:
    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    data = json.loads(source.read_text())
    command = (
        sys.argv[3]
        if len(sys.argv) > 3
        else f"faceattr cluster {data['run']} --split {data['split']} --seed {data['seed']}"
    )
    heads = []
    for head in data["heads"]:
        keep = {k: v for k, v in head.items() if k != "silhouette"}
        keep["clusters"] = [{k: v for k, v in c.items() if k != "ids"} for c in head["clusters"]]
        heads.append(keep)
    write_json({"command": command, "run": data["run"], "split": data["split"], "heads": heads}, target)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
