-- Like a Job's: Progressing while its tuner starts and its trials run; Healthy once it Succeeded
-- (maxTrials, goal or maxDuration reached: status.bestTrial is final); Degraded when it Failed (too many
-- failed trials) or is stuck (Stalled); Suspended while spec.suspend holds it.
local trials = ""
if st.trialsDone ~= nil then
  trials = "; trials done " .. st.trialsDone
end
if st.bestTrial ~= nil and st.bestTrial.value ~= nil and st.bestTrial.number ~= nil then
  trials = trials .. ", best " .. st.bestTrial.value .. " (trial " .. st.bestTrial.number .. ")"
end
if holds("Stalled") then
  hs.status = "Degraded"
  hs.message = said(cond.Stalled) .. trials
elseif holds("Succeeded") then
  hs.status = "Healthy"
  hs.message = said(cond.Succeeded) .. trials
elseif st.phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = "Suspended: no trial runs" .. trials
elseif cond.Ready ~= nil then
  hs.message = said(cond.Ready) .. trials
end
return hs
