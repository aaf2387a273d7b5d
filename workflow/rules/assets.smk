# Toy assets (teachers, digit classifier) and the tracking store: built once, cached like any output.

rule tracking_store:
    output: f"{R}/tracking.json"
    run:
        dag.track_store(S, TRACKING_URI, output[0])


rule asset:
    output: f"{R}/assets/{{asset}}.pt"
    wildcard_constraints: asset="|".join(S.assets)
    threads: 1
    run:
        dag.launch_asset(S, wildcards.asset, output[0])
