# Toy assets (teachers, digit classifier, the text-to-image toy's folders) and the tracking store: built once,
# cached like any output.
from workflow.sweep import is_folder_asset

rule tracking_store:
    output: f"{R}/tracking.json"
    run:
        dag.track_store(S, TRACKING_URI, output[0])


FOLDER_ASSETS = [a for a in S.assets if is_folder_asset(S, a)]  # save_pretrained layouts (text-to-image toy)
FILE_ASSETS = [a for a in S.assets if a not in FOLDER_ASSETS]

if FILE_ASSETS:
    rule asset:
        input: lambda w: list(dag.asset_needs(S, w.asset).values())
        output: f"{R}/assets/{{asset}}.pt"
        wildcard_constraints: asset="|".join(FILE_ASSETS)
        threads: 1
        priority: 1000  # assets first: a late teacher would leave its runs to the end, on one core
        run:
            dag.launch_asset(S, wildcards.asset, output[0])

if FOLDER_ASSETS:
    rule asset_folder:
        input: lambda w: list(dag.asset_needs(S, w.asset).values())
        output: directory(f"{R}/assets/{{asset}}")
        wildcard_constraints: asset="|".join(FOLDER_ASSETS)
        threads: 1
        priority: 1000
        run:
            dag.launch_asset(S, wildcards.asset, output[0])
