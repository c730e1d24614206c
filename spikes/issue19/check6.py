import os, sys, time, datetime
import torch, torch.distributed as dist
import torch.distributed.nn.functional as dnnf
rank = int(os.environ["RANK"]); torch.set_num_threads(1)
dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=3))
slow = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=30))
# autograd all_gather on gloo
x = torch.full((2, 3), float(rank + 1), requires_grad=True)
g = torch.cat(dnnf.all_gather(x))
(g.sum() * (rank + 1)).backward()
print(f"rank{rank} all_gather grad = {x.grad[0,0].item()} (expect sum over ranks of (r+1) = 3)", flush=True)
# rank-0-only work longer than the default timeout, waited for on the slow group
t0 = time.time()
if rank == 0: time.sleep(6)
dist.barrier(group=slow)
print(f"rank{rank} slow-group barrier ok after {time.time()-t0:.1f}s", flush=True)
box = [None]
t0 = time.time()
if rank == 0: time.sleep(6); box = [{"ndcg@10": 0.5}]
try:
    dist.broadcast_object_list(box, src=0)
    print(f"rank{rank} default-group broadcast ok {box} after {time.time()-t0:.1f}s", flush=True)
except Exception as e:
    print(f"rank{rank} default-group broadcast: {type(e).__name__} after {time.time()-t0:.1f}s: {str(e)[:150]}", flush=True)
    sys.exit(3)
