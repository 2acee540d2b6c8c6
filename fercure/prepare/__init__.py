"""The prepare stage's parts; its orchestrator is fercure/stages/prepare.py (as train's is
fercure/stages/train.py beside fercure/train/).

summary.py    PrepareRun (what one run's steps share) and PrepareSummary, with the notes on faces
facepass.py   decode, detect, align and judge each sample, chunk by chunk (resumable parts)
manifest.py   the manifest and crop store: a finished run's rows reused, duplicates, the tables written
shards.py     --shard I/N: which samples a shard does, writing its share, merging a complete set
"""
