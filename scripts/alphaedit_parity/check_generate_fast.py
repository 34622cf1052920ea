#!/usr/bin/env python3
"""check_generate_fast.py: does the reference's generate_fast (util/generate.py) see the text it
has generated so far?  It feeds one new token at a time with the KV cache but passes only the
attention mask of the current slice (`attention_mask[:, cur_context]`, 1 column).  Under
transformers 5 this makes every new token attend to <s> only: the incremental logits equal those
of a full forward with mask [1, 0, ..., 0] (max diff ~3e-6), not those of the real prefix (~9).
"""
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
M='/work/main/tests/fixtures/fact-llama'
model=AutoModelForCausalLM.from_pretrained(M,dtype=torch.float32); tok=AutoTokenizer.from_pretrained(M); tok.pad_token=tok.eos_token
inp=tok(["The birthplace of Linric"],return_tensors='pt')
ids,am=inp['input_ids'],inp['attention_mask']
print(ids)
with torch.no_grad():
    full=model(input_ids=ids,attention_mask=am).logits[0,-1]
    # the reference's generate_fast way: first slice, then one token at a time with the mask of the slice only
    out=model(input_ids=ids[:,:2],attention_mask=am[:,:2],use_cache=True); pkv=out.past_key_values
    for t in range(2,ids.shape[1]):
        out=model(input_ids=ids[:,t:t+1],attention_mask=am[:,t:t+1],past_key_values=pkv,use_cache=True); pkv=out.past_key_values
    inc=out.logits[0,-1]
    out2=model(input_ids=ids[:,-1:],attention_mask=am[:,-1:]).logits[0,-1]  # no context at all
print('max|full-incremental(sliced mask)|',float((full-inc).abs().max()),' max|incremental - no-context|',float((inc-out2).abs().max()))
print('top5 full',tok.convert_ids_to_tokens(full.topk(5).indices),' top5 inc',tok.convert_ids_to_tokens(inc.topk(5).indices))
L=ids.shape[1]
with torch.no_grad():
    for name,mask in [('bos+self',[1]+[0]*(L-2)+[1]),('bos only',[1]+[0]*(L-1)),('first2+self',[1,1]+[0]*(L-3)+[1]),('first2',[1,1]+[0]*(L-2))]:
        lg=model(input_ids=ids,attention_mask=torch.tensor([mask])).logits[0,-1]
        print(name, float((lg-inc).abs().max()))
