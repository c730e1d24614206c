import os, sys, time, datetime
import torch, torch.distributed as dist
mode = sys.argv[1]  # die | hang
rank = int(os.environ["RANK"])
torch.set_num_threads(1)
dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=8))
x = torch.ones(1000)
for step in range(100):
    if rank == 1 and step == 3:
        if mode == "die": os._exit(9)
        time.sleep(60)
    t0 = time.time()
    try:
        dist.all_reduce(x); x /= 2
    except Exception as e:
        print(f"rank{rank} step{step}: {type(e).__module__}.{type(e).__name__} after {time.time()-t0:.1f}s: {str(e)[:300]}", flush=True)
        sys.exit(3)
print(f"rank{rank} done")
