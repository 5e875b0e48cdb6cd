local hs = { status = "Progressing", message = "Waiting for the Lepton operator" }
if obj.status == nil then
  return hs
end
local st = obj.status
if obj.metadata.generation ~= nil and st.observedGeneration ~= obj.metadata.generation then
  hs.message = "Waiting for the Lepton operator to observe generation " .. obj.metadata.generation
  return hs
end
local cond = {}
if st.conditions ~= nil then
  for _, c in ipairs(st.conditions) do
    cond[c.type] = c
  end
end
local function said(c)
  if c.message ~= nil and c.message ~= "" then
    return c.reason .. ": " .. c.message
  end
  return c.reason
end
local function holds(type)
  return cond[type] ~= nil and cond[type].status == "True"
end
