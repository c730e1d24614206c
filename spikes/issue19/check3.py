import os, sys, shutil, time
sys.argv = [sys.argv[0]] + sys.argv[1:]
import torch, torch.distributed as dist
import torch.multiprocessing as mp
import torch.distributed.checkpoint as dcp
sys.path.insert(0, "/tmp/h19")
from check2 import Task, Model, wrap, copy_full_into, gather_full, batches, LR, WD
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

OUT = "/tmp/h19/out2"; CK = f"{OUT}/ckpt_w2"
saved = torch.load(f"{OUT}/result_w2.pt")["sd"]

def plain():
    torch.manual_seed(123)
    task = Task(Model())
    sd = {"model": task.state_dict()}
    mom = {"t_item": torch.zeros(50, 8), "t_user": torch.zeros(20, 8)}
    osd = {"state": {f"fused.model.{t[2:]}_ebc.embedding_bags.{t}.weight": {f"{t}.momentum1": m} for t, m in mom.items()}}
    t0 = time.time()
    dcp.load({"model": sd["model"], "optim": osd}, checkpoint_id=CK)  # no process group: runs as 1 rank
    task.load_state_dict(sd["model"])
    print("PLAIN load ok", round(time.time() - t0, 2), "s; max|loaded-saved|",
          max((task.state_dict()[k] - v).abs().max().item() for k, v in saved.items()),
          "momentum sums", {t: round(m.sum().item(), 4) for t, m in mom.items()})
    return mom

def world1(rank, mom_ref):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    torch.manual_seed(0)
    task = Task(Model())
    full = {k: v.detach().clone() for k, v in task.state_dict().items()}
    dmp, plan = wrap(task, 1, {"t_item": "cw", "t_user": "tw"})
    print("W1 plan item shards:", [ (s.shard_offsets, s.shard_sizes, s.placement) for s in plan.plan["model.item_ebc"]["t_item"].sharding_spec.shards])
    pre = gather_full(dmp, 0)
    print("W1 sharded init == unsharded init:", all(torch.equal(pre[k], full[k]) for k in full))
    dense = KeyedOptimizerWrapper(dict(in_backward_optimizer_filter(dmp.named_parameters())),
                                  lambda ps: torch.optim.AdamW(ps, lr=LR, weight_decay=WD))
    opt = CombinedOptimizer([("fused", dmp.fused_optimizer), ("dense", dense)])
    opt.init_state()  # create AdamW state so the loaded state has somewhere to go
    sd = {"model": dmp.state_dict(), "optim": opt.state_dict()}
    dcp.load(sd, checkpoint_id=CK)
    opt.load_state_dict(sd["optim"])
    got = gather_full(dmp, 0)
    print("W1 max|loaded-saved| model:", max((got[k] - v).abs().max().item() for k, v in saved.items()))
    osd = opt.state_dict()["state"]
    for t in mom_ref:
        st = osd[f"fused.model.{t[2:]}_ebc.embedding_bags.{t}.weight"][f"{t}.momentum1"]
        full_m = torch.empty(st.size()); st.gather(dst=0, out=full_m)
        print("W1 momentum", t, "max diff", (full_m - mom_ref[t]).abs().max().item())
    print("W1 dense step", osd["dense.model.item_mlp.weight"]["step"])
    # continue one step at world 1
    users, cands, pos = next(iter(batches(1)))
    loss = dmp(users, cands, pos); loss.backward(); opt.step(); print("W1 continued, loss", round(loss.item(), 5))
    dist.destroy_process_group()

def missing():
    bad = f"{OUT}/ckpt_missing"; shutil.rmtree(bad, ignore_errors=True); shutil.copytree(CK, bad)
    os.remove(f"{bad}/__1_0.distcp")
    task = Task(Model()); sd = {"model": task.state_dict()}
    try:
        dcp.load(sd, checkpoint_id=bad)
        print("MISSING: no error!")
    except Exception as e:
        print("MISSING ->", type(e).__name__, str(e).replace("\n", " ")[:400])

if __name__ == "__main__":
    os.environ["OMP_NUM_THREADS"] = "1"; torch.set_num_threads(1)
    mom = plain()
    mp.spawn(world1, args=(mom,), nprocs=1, join=True)
    missing()
