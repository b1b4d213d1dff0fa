"""The one place that turns a plan node into a job.

- resources.py: cluster profile + job kind -> cpus, GPUs, memory, time (`Resources`)
- flags.py:     resources -> `#SBATCH` lines and the sbatch argv (the one flag writer)
- render.py:    the templates (`templates/*.sh.j2`, package data) with enforced shell quoting
- node.py:      the payload (`python -m compress_distill.node_main ...`) and `node_job`, what the
                runner submits and `compress-distill render` writes
- script.py:    the Slurm batch wrapper: USR1 near the time limit -> requeue (the only one)
- study.py:     `compress-distill render`: every job node's script, as node.py builds it
- envs/*.txt:   the pins of the job environments (vLLM, Axolotl, the app), read by `preflight`
"""
