# Paper-scale files (sim_core/assets.py MANIFEST): NVIDIA's teacher pickles, EDM's FID statistics, the Inception
# weights, CIFAR-10. They are never fetched as a side effect of `all_tables`: a missing or mismatched file stops
# the DAG at `verify_assets`, before any job is submitted, naming the file, its URL and where to put it.
# `snakemake download_assets --config scale=paper` fetches what is missing (where there is internet).

if SW.downloads:
    rule download_assets:
        run:
            dag.download_assets(S, SW)


    rule verify_assets:
        output: f"{R}/assets/verified.json"
        params: files=dag.asset_fingerprint(SW)  # size and mtime of each file: a changed file is checked again
        run:
            dag.verify_assets(S, SW, output[0])
