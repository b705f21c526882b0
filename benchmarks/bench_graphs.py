"""Graph caching: structures/s of the cdssl graph stage vs MatGL's MGLDataset conversion.

    .venv/bin/python benchmarks/bench_graphs.py --n 2000
Both start from the same pymatgen dicts (what the data stage writes) and build the same
Structure2Graph graphs with cutoff 5 A and MatGL's default element list.
"""

from __future__ import annotations

import tempfile

from _common import environment, parser, report, table, timed


def main() -> None:
    args = parser(__doc__).parse_args()
    import torch
    from matgl.ext.pymatgen import Structure2Graph
    from matgl.graph.data import MGLDataset
    from pymatgen.core import Structure

    from cdssl.graphs import build_cache, element_types

    torch.set_num_threads(1)
    environment(args)
    t = table(args.n, args.max_sites)

    def matgl_path():
        with tempfile.TemporaryDirectory() as tmp:
            structures = [Structure.from_dict(s) for s in t["structure"]]
            MGLDataset(
                structures=structures,
                converter=Structure2Graph(element_types(), 5.0),
                labels={"y": t["target"].tolist()},
                root=tmp,
                save_cache=True,
            )

    rows = [("MatGL MGLDataset (save_cache)", len(t) / timed(matgl_path))]
    for p in sorted({1, args.threads}):
        rows.append((f"cdssl build_cache, {p} process(es)", len(t) / timed(lambda p=p: build_cache(t, 5.0, p))))
    report(rows, "MatGL MGLDataset (save_cache)", "structures/s")


if __name__ == "__main__":
    main()
