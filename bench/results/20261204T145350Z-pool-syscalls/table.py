import json,sys,csv
import os; os.chdir(os.path.dirname(os.path.abspath(__file__))); runs=sys.argv[1:]
data={}
for r in runs:
    d={}
    for line in open('%s.stat'%r):
        if line.startswith('#') or not line.strip(): continue
        p=line.split(',')
        d[p[2].replace('syscalls:sys_enter_','').replace('raw_syscalls:sys_enter','ALL')]=int(p[0])
    j=json.load(open('%s.loadgen.json'%r))
    data[r]=(d,j['accepted'],j['server_cpu_s'],j['runs_lost'])
names=list(data[runs[0]][0].keys())
print('%-16s'%'syscall'+''.join('%10s'%r for r in runs))
for n in names:
    print('%-16s'%n+''.join('%10.2f'%(data[r][0].get(n,0)/data[r][1]) for r in runs))
print('%-16s'%'accepted'+''.join('%10d'%data[r][1] for r in runs))
print('%-16s'%'us/POST'+''.join('%10.1f'%(data[r][2]/data[r][1]*1e6) for r in runs))
print('%-16s'%'lost'+''.join('%10d'%data[r][3] for r in runs))
