import os, sys, time, datetime, shutil
import torch, torch.distributed as dist
import torch.nn.functional as F
from torch import nn
import torch.multiprocessing as mp
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor, PoolingType
from torchrec.distributed.model_parallel import DistributedModelParallel, DefaultDataParallelWrapper
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology, ParameterConstraints
from torchrec.distributed.types import ShardingEnv, ShardingType
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from fbgemm_gpu.tbe.config.optimizer_config import WeightDecayMode
import torch.distributed.checkpoint as dcp

DIM, NI, NU, B, LR, WD = 8, 50, 20, 8, 0.05, 0.01

class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.item_ebc = EmbeddingBagCollection(tables=[
            EmbeddingBagConfig(name="t_item", embedding_dim=DIM, num_embeddings=NI, feature_names=["item"], pooling=PoolingType.MEAN)])
        self.user_ebc = EmbeddingBagCollection(tables=[
            EmbeddingBagConfig(name="t_user", embedding_dim=DIM, num_embeddings=NU, feature_names=["user"], pooling=PoolingType.MEAN)])
        self.item_mlp = nn.Linear(DIM, DIM)
        self.user_mlp = nn.Linear(DIM, DIM)

def kjt(name, ids):
    return KeyedJaggedTensor.from_lengths_sync(keys=[name], values=ids, lengths=torch.ones(len(ids), dtype=torch.int32))

class Task(nn.Module):
    def __init__(self, model):
        super().__init__(); self.model = model
    def forward(self, users, cands, pos):
        m = self.model
        u = F.normalize(m.user_mlp(m.user_ebc(kjt("user", users))["user"]), dim=-1)
        v = F.normalize(m.item_mlp(m.item_ebc(kjt("item", cands))["item"]), dim=-1)
        return F.cross_entropy(u @ v.T / 0.1, pos)

def batches(steps):
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        users = torch.randint(0, NU, (B,), generator=g)
        targets = torch.randint(0, NI, (B,), generator=g)
        cands, where = torch.unique(targets, return_inverse=True)
        yield users, cands, where

def wrap(task, world, kinds):
    dense_types = {"cw": ShardingType.COLUMN_WISE.value, "tw": ShardingType.TABLE_WISE.value,
                   "twcw": ShardingType.TABLE_COLUMN_WISE.value, "rw": ShardingType.ROW_WISE.value}
    constraints = {t: ParameterConstraints(sharding_types=[dense_types[k]], min_partition=DIM // 2) for t, k in kinds.items()}
    topo = Topology(world_size=world, compute_device="cpu", ddr_cap=1 << 30, local_world_size=world)
    sharders = [EmbeddingBagCollectionSharder(fused_params={
        "optimizer": EmbOptimType.EXACT_ADAGRAD, "learning_rate": LR, "eps": 1e-8})]
    pg = dist.GroupMember.WORLD
    plan = EmbeddingShardingPlanner(topology=topo, constraints=constraints).collective_plan(task, sharders, pg)
    dmp = DistributedModelParallel(task, env=ShardingEnv.from_process_group(pg), device=torch.device("cpu"),
                                   plan=plan, sharders=sharders,
                                   data_parallel_wrapper=DefaultDataParallelWrapper(static_graph=False))
    return dmp, plan

def copy_full_into(dmp, full):
    with torch.no_grad():
        for k, v in dmp.state_dict().items():
            if hasattr(v, "local_shards"):
                for s in v.local_shards():
                    o, z = s.metadata.shard_offsets, s.metadata.shard_sizes
                    s.tensor.copy_(full[k][o[0]:o[0]+z[0], o[1]:o[1]+z[1]])

def gather_full(dmp, rank):
    got = {}
    for k, v in dmp.state_dict().items():
        if type(v).__name__ == "ShardedTensor":
            out = torch.empty(v.size()) if rank == 0 else None
            v.gather(dst=0, out=out); got[k] = out
        else:
            got[k] = v.detach().clone()
    return got

def reference(steps):
    torch.manual_seed(0)
    task = Task(Model())
    emb = [p for n, p in task.named_parameters() if "_ebc." in n]
    rest = [p for n, p in task.named_parameters() if "_ebc." not in n]
    o1 = torch.optim.Adagrad(emb, lr=LR, eps=1e-8); o2 = torch.optim.AdamW(rest, lr=LR, weight_decay=WD)
    s1 = torch.optim.lr_scheduler.LambdaLR(o1, lambda s: 1.0 / (s + 1)); s2 = torch.optim.lr_scheduler.LambdaLR(o2, lambda s: 1.0 / (s + 1))
    losses = []
    for users, cands, pos in batches(steps):
        loss = task(users, cands, pos); loss.backward(); o1.step(); o2.step(); s1.step(); s2.step(); o1.zero_grad(); o2.zero_grad()
        losses.append(loss.item())
    return losses, {k: v.detach().clone() for k, v in task.state_dict().items()}

def worker(rank, world, port, steps, outdir, kinds):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=20))
    torch.manual_seed(0)
    task = Task(Model())
    full = {k: v.detach().clone() for k, v in task.state_dict().items()}
    dmp, plan = wrap(task, world, kinds)
    if rank == 0:
        print(f"[w{world}] PLAN", str(plan).replace("\n", " | ")[:600], flush=True)
        print(f"[w{world}] wrapped:", type(dmp._dmp_wrapped_module).__name__)
        for k, v in dmp.state_dict().items(): print(f"[w{world}] SD", k, type(v).__name__, tuple(v.shape))
        print(f"[w{world}] NP", [(k, type(p).__name__) for k, p in dmp.named_parameters()])
        print(f"[w{world}] fused keys", list(dmp.fused_optimizer.params.keys()))
    copy_full_into(dmp, full)
    dense = KeyedOptimizerWrapper(dict(in_backward_optimizer_filter(dmp.named_parameters())),
                                  lambda ps: torch.optim.AdamW(ps, lr=LR, weight_decay=WD))
    opt = CombinedOptimizer([("fused", dmp.fused_optimizer), ("dense", dense)])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    half = B // world
    losses = []
    for users, cands, pos in batches(steps):
        sl = slice(rank * half, (rank + 1) * half)
        loss = dmp(users[sl], cands, pos[sl])
        loss.backward(); opt.step(); sched.step(); opt.zero_grad()
        l = loss.detach().clone(); dist.all_reduce(l); losses.append((l / world).item())
    got = gather_full(dmp, rank)
    if rank == 0:
        print(f"[w{world}] lrs after sched", [g["lr"] for g in opt.param_groups][:3])
        print(f"[w{world}] losses", [round(x, 6) for x in losses], flush=True)
        torch.save({"losses": losses, "sd": got}, f"{outdir}/result_w{world}.pt")
        rl, rsd = reference(steps)
        print(f"[w{world}] plain ref losses", [round(x, 6) for x in rl])
        print(f"[w{world}] max|dmp-plain| per tensor", {k: f"{(got[k] - rsd[k]).abs().max().item():.2e}" for k in rsd})
    # DCP save of model + optimizer
    osd = opt.state_dict()
    if rank == 0:
        print(f"[w{world}] OPT SD keys", [(k, type(v).__name__) for k, v in list(osd["state"].items())][:8])
        for k, v in osd["state"].items():
            print(f"[w{world}] OPT state", k, {n: (type(t).__name__, tuple(t.shape) if hasattr(t, 'shape') else t) for n, t in v.items()})
    ck = f"{outdir}/ckpt_w{world}"
    t0 = time.time()
    dcp.save({"model": dmp.state_dict(), "optim": osd}, checkpoint_id=ck)
    if rank == 0: print(f"[w{world}] dcp.save ok {time.time()-t0:.2f}s files", sorted(os.listdir(ck)), flush=True)
    dist.barrier()
    dist.destroy_process_group()

if __name__ == "__main__":
    world, port, steps = int(sys.argv[1]), int(sys.argv[2]), 5
    kinds = dict(a.split("=") for a in sys.argv[3].split(",")) if len(sys.argv) > 3 else {"t_item": "cw", "t_user": "tw"}
    outdir = "/tmp/h19/out2"; os.makedirs(outdir, exist_ok=True); shutil.rmtree(f"{outdir}/ckpt_w{world}", ignore_errors=True)
    t0 = time.time()
    mp.spawn(worker, args=(world, port, steps, outdir, kinds), nprocs=world, join=True)
    print("spawn done", round(time.time() - t0, 1))
