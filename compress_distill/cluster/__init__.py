"""What the cluster path needs to know about its machines and environments: the job envs of a
profile and their pinned versions (`envs`), model families and what they change in serving and
training (`families`), where weights come from and how they are staged (`weights`), the vLLM
command line (`vllm_args`), the `preflight` checks that find a grid's first-hour failures, the
shard-level Dask CPU fan-out (`fanout`), GPU-hours from sacct (`accounting`), and where the package
finds things outside itself (`paths`: models dir, dev envs, the checkout). This file imports
nothing, so importing one module does not import the others.
"""
